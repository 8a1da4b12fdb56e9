# ruff: noqa
# Answer set of 10_language_models, exercise prediction_divergence (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case, with spaces
prediction_divergence = " C "

# %% bug: only the reverse KL
prediction_divergence = "a"

# %% bug: JSD(0.5) covers both peaks
prediction_divergence = "b"

# %% bug: all four
prediction_divergence = "d"
