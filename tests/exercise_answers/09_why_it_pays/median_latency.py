# ruff: noqa
# Answer set of 09_why_it_pays, exercise median_latency.

# %% alternative: torch.no_grad, perf_counter_ns, the middle of the sorted times
def median_latency(model, x, repeats=20):
    mode = model.training
    model.train(False)
    try:
        with torch.no_grad():
            model(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter_ns()
                model(x)
                times.append((time.perf_counter_ns() - t0) / 1e9)
    finally:
        model.train(mode)
    times.sort()
    mid = len(times) // 2
    return float(times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2)


# %% kdlib: kdlib's measure_latency
def median_latency(model, x, repeats=20):
    return measure_latency(
        model, tuple(x.shape[1:]), x.shape[0], repeats=repeats, warmup=1, device="cpu"
    )


# %% bug: the mean, which one slow call drags up
def median_latency(model, x, repeats=20):
    was = model.training
    model.eval()
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    model.train(was)
    return sum(times) / len(times)


# %% bug: the model is left in eval mode
def median_latency(model, x, repeats=20):
    import statistics

    model.eval()
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# %% bug: no warm-up call
def median_latency(model, x, repeats=20):
    import statistics

    was = model.training
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    model.train(was)
    return statistics.median(times)
