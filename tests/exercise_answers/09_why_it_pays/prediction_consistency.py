# ruff: noqa
# Answer set of 09_why_it_pays, exercise prediction_consistency (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with a newline
prediction_consistency = "B\n"

# %% bug: the cached output on the clean image
prediction_consistency = "a"

# %% bug: both equally
prediction_consistency = "c"

# %% bug: a letter as a number
prediction_consistency = 2
