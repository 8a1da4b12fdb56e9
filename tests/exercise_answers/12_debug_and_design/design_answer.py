# ruff: noqa
# Answer set of 12_debug_and_design, exercise design_answer (tau and alpha within 6 runs).
# no kdlib implementation: the plan of runs is the answer; RunBudget only trains and counts

# %% alternative: a 3 x 2 grid, the best by hand
search = RunBudget(train_student, val, runs=6)
for alpha in (0.0, 0.3, 0.6):
    for temperature in (2.0, 6.0):
        search.run(temperature=temperature, alpha=alpha)
top = max(search.log, key=lambda r: r["val_accuracy"])
chosen = {"temperature": top["temperature"], "alpha": top["alpha"]}

# %% alternative: four runs, alpha first, integer temperatures
search = RunBudget(train_student, val, runs=6)
for alpha in (0.2, 0.6):
    search.run(temperature=4, alpha=alpha)
a = search.best()["alpha"]
search.run(temperature=2, alpha=a)
search.run(temperature=8, alpha=a)
chosen = dict(search.best())

# %% bug: the last run chosen, not the best on validation
search = RunBudget(train_student, val, runs=6)
for alpha in (0.1, 0.5, 0.9):
    search.run(temperature=4.0, alpha=alpha)
chosen = {"temperature": 4.0, "alpha": 0.9}

# %% bug: a setting that was never run
search = RunBudget(train_student, val, runs=6)
for alpha in (0.2, 0.8):
    search.run(temperature=4.0, alpha=alpha)
chosen = {"temperature": 4.0, "alpha": 0.5}

# %% bug: the labels alone (alpha = 1) at every temperature
search = RunBudget(train_student, val, runs=6)
for temperature in (1.0, 4.0, 16.0):
    search.run(temperature=temperature, alpha=1.0)
chosen = search.best()

# %% bug: only the teacher's weakest settings (alpha near 1)
search = RunBudget(train_student, val, runs=6)
for alpha in (0.9, 0.95):
    search.run(temperature=4.0, alpha=alpha)
chosen = search.best()

# %% bug: a budget of its own, with more runs
search = RunBudget(train_student, val, runs=12)
for alpha in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
    search.run(temperature=4.0, alpha=alpha)
chosen = search.best()

# %% bug: chosen as a tuple
search = RunBudget(train_student, val, runs=6)
search.run(temperature=4.0, alpha=0.3)
chosen = (4.0, 0.3)
