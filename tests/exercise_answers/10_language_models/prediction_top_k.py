# ruff: noqa
# Answer set of 10_language_models, exercise prediction_top_k (a choice among stated options).
# no kdlib implementation: a prediction is a letter, there is nothing of kdlib to call

# %% alternative: upper case
prediction_top_k = "C"

# %% bug: fewer invalid sentences
prediction_top_k = "a"

# %% bug: about as many
prediction_top_k = "b"
