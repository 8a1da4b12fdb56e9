# ruff: noqa
# Answer set of 08_multi_teacher, exercise prediction (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction = " B"

# %% bug: below all three single teachers
prediction = "a"

# %% bug: exactly at the mean of the three students
prediction = "c"
