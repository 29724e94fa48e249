"""The ``consul-results`` commands, grouped as users see them: reading results
(:mod:`.results`), deleting them (:mod:`.cleaning`), the sessions behind them (:mod:`.sessions`)
and the dev server (:mod:`.devserver`). Commands parse options and render; the work is done by
:mod:`consulresults.operations`, imported when a command runs so ``--help`` stays fast."""
