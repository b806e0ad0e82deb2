"""The qtests regression suite: run ``pytest qtests --reference ... --model ...`` (or ``--pyargs qtests``)."""
