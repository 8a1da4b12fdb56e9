# ruff: noqa
# Answer set of 07_self_and_online, exercise prediction_dml (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with a trailing space
prediction_dml = "A "

# %% bug: the stronger network gains
prediction_dml = "b"

# %% bug: both gain alike
prediction_dml = "c"

# %% bug: a number instead of a letter
prediction_dml = 1
