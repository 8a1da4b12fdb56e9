# ruff: noqa
# Answer set of 04_feature_distillation, exercise feature_prediction (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction = "A\n"

# %% bug: the hint adds most
prediction = "b"

# %% bug: attention transfer adds most
prediction = "c"
