"""Studies: train a suite of classical and deep models on identical splits and compare them.

* :mod:`medlens.study.suites`     named suites (quick, standard, full) and time budgets
* :mod:`medlens.study.compare`    `medlens compare`: train the suite, then evaluate
* :mod:`medlens.study.evaluate`   `medlens evaluate`: everything from the run's artifacts
* :mod:`medlens.study.comparison` the comparison.json schema and the statistics behind it
* :mod:`medlens.study.demo`       `medlens demo`: the whole study on synthetic data
* :mod:`medlens.study.subgroups`  `--by`: performance per subgroup (sex, age band, ...), gaps and tests
* :mod:`medlens.study.attributes_join` the record attributes of a run's sample ids, from its source
"""
