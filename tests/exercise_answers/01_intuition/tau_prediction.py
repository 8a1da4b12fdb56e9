# ruff: noqa
# Answer set of 01_intuition, exercise tau_prediction (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction = " B "

# %% bug: a higher temperature makes the teacher more certain
prediction = "a"

# %% bug: the order of the classes does not change, so neither does the top probability
prediction = "c"

# %% bug: the probability itself instead of a letter
prediction = 0.1
