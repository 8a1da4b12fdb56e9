"""The course machinery: running, grading and releasing the notebooks (the ``course`` extra).

This half of the package needs Jupyter, papermill, nbconvert and nbgrader; the library half
(``kdlib.losses``, ``kdlib.distill``, ...) needs only PyTorch and never imports from here.

- ``kdlib.course.run``      ``kdlib course run``: execute the solution notebooks headless
- ``kdlib.course.report``   the run's ``results.json`` and ``index.html``
- ``kdlib.course.results``  ``save_results``: the headline figures each notebook leaves behind
                            (plain JSON, importable without the extra)
- ``kdlib.course.grade``    ``kdlib grade``: submissions to grades, feedback and a gradebook
- ``kdlib.course.sandbox``  each submission's kernel in bubblewrap; the guard of locked cells
- ``kdlib.course.gradebook`` the ``--db`` URL (SQLite, PostgreSQL), checked before grading
- ``kdlib.course.release``  ``kdlib release``: the student notebooks generated from solutions/
- ``kdlib.course.cli``      the ``kdlib`` command's entry point

Importing this package imports none of those modules. The student edition
(``kdlib release --student-edition``) ships only ``results`` and ``cli`` of them.
"""
