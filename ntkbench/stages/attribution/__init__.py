"""Stage 3c: the data-attribution benchmark (SPEC §6), for the experiments listed in the config's
``attribution.experiments``. Each experiment's network of one training seed ``s`` (the
``attribution.seed``, by default the experiment's first seed) is attributed.

One module per rule (``rules/attribution.smk``), so that each job's code fingerprint covers
only the library code it runs (editing a method or the figure never retrains the subsets);
the package itself imports nothing. Per experiment:

- :func:`.subsets.subsets_stage` — a group of ``subsets_per_job`` subset trainings: subset ``j`` is
  drawn from ``(subset_seed, j)`` alone (:mod:`ntkbench.attribution.subsets`), a network is
  trained on it with the experiment's recipe (model seed by ``seed_scheme``), and its
  true-class test margins ``f_j(x)`` are stored with the subset's mask.
- :func:`.scores.gradients_stage` — retrains the network of seed ``s`` with checkpoints (checked to
  reproduce the train stage's ``model.pt``) and stores the TracIn-CP, Grad-Dot, Grad-Cos and
  TRAK scores τ(x, i) (n_test, N).
- :func:`.scores.mislabel_stage` — the noisy-label twin: ``mislabel.fraction`` of the training labels
  flipped (:mod:`ntkbench.data.label_noise`), a network trained on them with the same recipe
  and seed, every kernel of the experiment computed in memory from it (train × train only,
  with the kernel stage's options), a kGLM fitted on each (the experiment's kGLM settings),
  and the self-influence τ(x_i, x_i) of every method stored beside the flipped mask. The twin
  lives inside this job rather than as an experiment of its own, so the main DAG (summary,
  seeds, test kernels) does not grow with it.
- :func:`.lds.lds_stage` — gathers the subsets (checking that every mask is the deterministic
  draw of its index), reads the kGLM surrogates' saved W and b and the test × train kernels of
  seed ``s``, and writes one row per method (and kernel): LDS mean ± SEM over test points,
  mislabel-detection AUC, and the kGLM's τ on the test set.

Then :func:`.table.table_stage` joins the experiments into ``results/attribution.csv`` / ``.md`` /
``.png``.
"""
