# ruff: noqa
# Answer set of 11_vit_and_edge, exercise prediction (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction = " A "

# %% bug: hard-label distillation through the token
prediction = "b"

# %% bug: neither
prediction = "c"
