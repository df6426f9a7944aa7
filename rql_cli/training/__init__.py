"""Training runs: one loop that offline training, continued offline training and online fine-tuning share.

    loop.py      the loop (sample or collect, update, log, evaluate, save, stop) and its entry ``run``
    session.py   one run while it runs: opening, restoring, saving, evaluating, recording; ``BatchSource``
    offline.py   batches from a dataset file or shard folder (``rql train``, ``rql finetune --dataset``)
    online.py    batches from a replay buffer fed by an env (``rql finetune --online-steps``)
    observer.py  the hooks a run reports through, and how it ended
    signals.py   Ctrl-C and SIGTERM
    runtime.py   CPU threads and the compiled update
"""
