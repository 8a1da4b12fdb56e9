# ruff: noqa
# Answer set of 07_self_and_online, exercise prediction_bane (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction_bane = " B "

# %% bug: BANE, the born-again ensemble
prediction_bane = "a"

# %% bug: the two ensembles are the same
prediction_bane = "c"

# %% bug: not one of the letters
prediction_bane = "independent"
