# ruff: noqa
# Answer set of 09_why_it_pays, exercise prediction_methods (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction_methods = " B "

# %% bug: KD from the width-32 teacher
prediction_methods = "a"

# %% bug: the multi-teacher ensemble
prediction_methods = "c"

# %% bug: not one of the letters
prediction_methods = "born-again"
