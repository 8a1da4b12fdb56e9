# ruff: noqa
# Answer set of 05_distillation_vs_finetuning, exercise kd_prediction (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction = " B "

# %% bug: no gain, the labels are the same
prediction = "a"

# %% bug: the student ends above its teacher
prediction = "c"

# %% bug: imitating a CNN hurts the MLP
prediction = "d"
