# ruff: noqa
# Answer set of 02_formal_loss, exercise tau2_prediction (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with a trailing space
prediction = "D "

# %% bug: the gradient does not depend on the temperature
prediction = "a"

# %% bug: it grows with tau (the tau^2 factor read the wrong way round)
prediction = "b"

# %% bug: only the 1/tau of the softmax's derivative, not the 1/tau of q - p
prediction = "c"
