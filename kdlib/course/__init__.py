"""The course machinery: running, grading and releasing the notebooks (the ``course`` extra).

This half of the package needs Jupyter, papermill, nbconvert and nbgrader; the library half
(``kdlib.losses``, ``kdlib.distill``, ...) needs only PyTorch and never imports from here.

- ``kdlib.course.run``      ``kdlib course run``: execute the solution notebooks headless
- ``kdlib.course.report``   the run's ``results.json`` and ``index.html``
- ``kdlib.course.results``  ``save_results``: the headline figures each notebook leaves behind
                            (plain JSON, importable without the extra)
- ``kdlib.course.grade``    ``kdlib grade``: submissions to grades, feedback and a gradebook
- ``kdlib.course.coursedir`` the course folder, its nbgrader config and assignments
- ``kdlib.course.submissions`` finding and checking the submissions of a class
- ``kdlib.course.autograde`` autograding jobs: a process per submission, limits, merged grades
- ``kdlib.course.canary``   the solution and the untouched release graded before the class
- ``kdlib.course.needed``   the cells autograding runs
- ``kdlib.course.export``   grades.csv and issues.csv; ``kdlib gradebook export``
- ``kdlib.course.sandbox``  each submission's kernel in bubblewrap; the scan of suspicious cells
- ``kdlib.course.guard``    the guard of locked cells (its source runs in the student's kernel)
- ``kdlib.course.gradebook`` the ``--db`` URL (SQLite, PostgreSQL), checked before grading
- ``kdlib.course.release``  ``kdlib release``: the student notebooks generated from solutions/
- ``kdlib.course.cli``      the ``kdlib`` command's entry point

Importing this package imports none of those modules. The student edition
(``kdlib release --student-edition``) ships only ``results`` and ``cli`` of them.
"""
