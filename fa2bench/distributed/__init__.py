"""fa2bench beyond one GPU, on PyTorch's own distributed engine (torch.distributed, NCCL or gloo, torchrun).

- ``launch``: the torchrun environment (rank, world size), starting ``torchrun`` for ``--gpus N``, the
  environment every process fa2bench starts runs under (NVLink multicast kept off), ``dispatch``: the one
  way a planned sweep or e2e run goes (launch the ranks, run as a rank, or run alone), and ``LeaderWriter``:
  the results store as the ranks of a collective run share it.
- ``shard``: a sweep's points spread over ranks by estimated cost, one results file per rank, and the merge
  into one results folder that names the points no rank finished.
- ``blocks``: attention on one (Q block, K/V block) pair returning the output *and* its log-sum-exp, and its
  backward given the final output and log-sum-exp: what ring attention is built from.
- ``ring``: context-parallel attention over ranks: zig-zag sharding, ring attention (``ring-fa2``), the
  all-gather-K/V baseline and PyTorch's ``context_parallel`` over SDPA (``cp-sdpa``).
- ``methods``: the context-parallel methods (the ring's providers: name, label, colour), torch-free.
- ``ringbench``: the context-parallel scaling benchmark (time, TFLOP/s per GPU, scaling efficiency,
  communication hidden, memory per GPU): ``plan_ring`` (its options as the sweep's ``Point``s) and
  ``execute_ring``, what ``fa2bench ring`` calls (a torchrun job per GPU count whose ranks enter through
  ``fa2bench ring`` too, and run the points through ``runner.run_points``, each a collective);
  ``ringcalls`` how one point runs (inputs, method calls, rank-synchronised timing, the slice check),
  ``ringcheck`` the gradient check, ``ringreport`` the report (scaling table and figure, report.md).
"""
