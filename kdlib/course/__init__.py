"""The course machinery: running, grading and releasing the notebooks (the ``course`` extra).

This half of the package needs Jupyter, papermill, nbconvert and nbgrader; the library half
(``kdlib.losses``, ``kdlib.distill``, ...) needs only PyTorch and never imports from here.

- ``kdlib.course.run``      ``kdlib course run``: execute the solution notebooks headless
- ``kdlib.course.report``   the run's ``results.json`` and ``index.html``
- ``kdlib.course.results``  ``save_results``: the headline figures each notebook leaves behind
                            (plain JSON, importable without the extra)
- ``kdlib.course.grade``    ``kdlib grade``: submissions to grades, feedback and a gradebook
- ``kdlib.course.release``  ``kdlib release``: the student notebooks generated from solutions/
- ``kdlib.course.cli``      the ``kdlib`` command's entry point

Importing this package imports none of those modules.
"""
