# ruff: noqa
# Answer set of 06_relation_based, exercise relation_prediction (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with a trailing newline
prediction = "B\n"

# %% bug: relations carry no class identities, so no gain
prediction = "a"

# %% bug: matching the geometry costs accuracy
prediction = "c"
