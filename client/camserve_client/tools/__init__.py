"""camserve tooling on top of the SDK: the ``camserve`` command (:mod:`.cli`), the load generator
(:mod:`.loadgen`, its command line `camserve bench` in :mod:`.benchcmd`) and its counting rule and report
(:mod:`.loadreport`), generated test images (:mod:`.testimages`) and
progress bars (:mod:`.progress`).

Kept out of the SDK (``camserve_client``) so that importing the client loads none of it. It needs
only what the SDK needs; ``pip install 'camserve[tools]'`` adds tqdm for progress bars and matplotlib
for the load generator's plot (without it the plot is skipped, saying so).
"""
