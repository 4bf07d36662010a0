"""Train: ``driver`` builds the typed ``spec`` and runs Horovod on Spark; ``executor`` is the body of
each Horovod rank (it reads its Petastorm shard; ``callbacks`` checkpoint and stop early).
"""
