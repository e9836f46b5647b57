# Stage 2: eNTK-family kernels, one HDF5 file per (experiment, seed, kernel).
# With kernel_options.tile_size set, a kernel is a grid of tile jobs (only the upper triangle
# of train x train) gathered into the same file; the tiles depend on the data bundle's sizes,
# so prepare_data is a checkpoint (ntkbench.stages.layout.kernel_tiles reads them).
from ntkbench.kinds import options_for
from ntkbench.stages.layout import kernel_tiles

TILE_SIZE = config["kernel_options"]["tile_size"]
KERNEL_FILE = f"{RESULTS}/{{experiment}}/seed{{seed}}/kernels/{{kernel}}.h5"


def kernel_params(w):
    """Only the options this kind depends on, so e.g. changing proj_dim reruns proj-* only."""
    return options_for(w.kernel, config["kernel_options"])


if TILE_SIZE is None:

    rule kernel:
        input:
            data=f"{RESULTS}/{{experiment}}/data.npz",
            model=f"{RESULTS}/{{experiment}}/seed{{seed}}/model.pt",
            # the network must reproduce its own logits before its kernels are computed
            logits=f"{RESULTS}/{{experiment}}/seed{{seed}}/logits.npz",
        output:
            update(KERNEL_FILE),
        params:
            options=kernel_params,
            block_size=config["kernel_options"]["block_size"],
            device=config["device"],
            code=script_code("kernel.py"),
        log:
            f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.tsv"
        # A job that dies (time limit, node failure) resumes from its checkpoint: one retry.
        retries: 1
        threads: stage_threads("kernels")
        resources:
            **stage_resources("kernels"),
        script:
            "../workflow_scripts/kernel.py"

else:
    TILE_FILE = RESULTS + "/{experiment}/seed{seed}/kernels/{kernel}.tiles/{group}.{i}.{j}.h5"

    def tile_files(w):
        """Every tile of the kernel, {group: {(i, j): path}}, once the data bundle exists."""
        data = checkpoints.prepare_data.get(experiment=w.experiment).output[0]
        return {
            group: {(i, j): TILE_FILE.format(experiment=w.experiment, seed=w.seed, kernel=w.kernel, group=group, i=i, j=j) for i, j in cells}
            for group, cells in kernel_tiles(data, TILE_SIZE).items()
        }

    rule kernel_tile:
        input:
            data=f"{RESULTS}/{{experiment}}/data.npz",
            model=f"{RESULTS}/{{experiment}}/seed{{seed}}/model.pt",
            # the network must reproduce its own logits before its kernels are computed
            logits=f"{RESULTS}/{{experiment}}/seed{{seed}}/logits.npz",
        output:
            temp(TILE_FILE),
        wildcard_constraints:
            group="[a-z_]+_train",
            i=r"\d+",
            j=r"\d+",
        params:
            options=kernel_params,
            block_size=config["kernel_options"]["block_size"],
            tile_size=TILE_SIZE,
            device=config["device"],
            code=script_code("kernel_tile.py"),
        log:
            f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.tiles/{{group}}.{{i}}.{{j}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.tiles/{{group}}.{{i}}.{{j}}.tsv"
        # A job that dies (time limit, node failure) resumes from its checkpoint: one retry.
        retries: 1
        threads: stage_threads("kernels")
        resources:
            **stage_resources("kernels"),
        script:
            "../workflow_scripts/kernel_tile.py"

    rule kernel_gather:
        input:
            data=f"{RESULTS}/{{experiment}}/data.npz",
            model=f"{RESULTS}/{{experiment}}/seed{{seed}}/model.pt",
            # the network must reproduce its own logits before its kernels are computed
            logits=f"{RESULTS}/{{experiment}}/seed{{seed}}/logits.npz",
            tiles=lambda w: [p for cells in tile_files(w).values() for p in cells.values()],
        output:
            update(KERNEL_FILE),
        params:
            options=kernel_params,
            block_size=config["kernel_options"]["block_size"],
            tile_size=TILE_SIZE,
            tiles=lambda w: {g: [[i, j, p] for (i, j), p in cells.items()] for g, cells in tile_files(w).items()},
            device=config["device"],
            code=script_code("kernel_gather.py"),
        log:
            f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.tsv"
        threads: stage_threads("report")
        resources:
            **stage_resources("kernels"),
        script:
            "../workflow_scripts/kernel_gather.py"
