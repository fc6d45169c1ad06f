"""The benchmark (`make bench`, `python -m include.bench`) and the history bench (`python -m include.bench.history`).

They measure the lakehouse; they are not part of it: the wheel and the code archive the clusters get leave
this package out.
"""
