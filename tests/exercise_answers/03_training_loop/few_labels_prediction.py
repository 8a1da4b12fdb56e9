# ruff: noqa
# Answer set of 03_training_loop, exercise few_labels_prediction (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction = " A "

# %% bug: about the same gain as with all the labels
prediction = "b"

# %% bug: a smaller gain with fewer labels
prediction = "c"

# %% bug: not one of the letters
prediction = "larger"
