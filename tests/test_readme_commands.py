"""The README's command lines agree with the program: a `--load train_log.<name>/...` names the
run folder that a training command before it creates (the scripts' own default names)."""
import os
import shlex

from epsilon_resnet import cli, run_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAINS = {"cifarEpsilonResnet.py": cli.cifar_main, "svhnEpsilonResnet.py": cli.svhn_main,
         "imagenetEpsilonResnet.py": cli.imagenet_main}


def readme_training_commands():
    """[argv] of every training-script line in the README's bash blocks, in order."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = f.read().split("```bash")[1:]
    lines = (line.split("#", 1)[0] for block in blocks for line in block.split("```", 1)[0].splitlines())
    return [argv for argv in map(shlex.split, lines) if len(argv) > 1 and os.path.basename(argv[1]) in MAINS]


def test_a_loaded_checkpoint_s_folder_is_one_that_a_command_before_it_creates(monkeypatch):
    created = []

    def record_run_folder(args, config, default_output):
        created.append(run_folder.run_dir_of(args.output or default_output(config)))
    monkeypatch.setattr(cli, "run_training", record_run_folder)
    monkeypatch.setattr(cli.console, "quiet_tensorflow", lambda verbose: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # --gpu sets it; monkeypatch restores it afterwards
    loads = 0
    for argv in readme_training_commands():
        flags = argv[2:]
        if "--eval" in flags:
            loads += 1
            load = flags[flags.index("--load") + 1]
            assert os.path.dirname(load) in created, f"{shlex.join(argv)}: the commands before it create {created}"
        else:
            MAINS[os.path.basename(argv[1])](flags)
    assert loads and "train_log.imagenet-d_101-e_2" in created


def test_run_imagenet_sh_trains_the_papers_runs_with_the_per_replica_gate(monkeypatch):
    """run_imagenet.sh's training command parses, and gates each GPU's share as the original did."""
    with open(os.path.join(ROOT, "run_imagenet.sh"), encoding="utf-8") as f:
        script = f.read().replace("\\\n", " ")
    (line,) = [line for line in script.splitlines() if "imagenetEpsilonResnet.py" in line and "python" in line]
    values = {"$depth": "152", "$eps": "1.8", "$gpus": "0,1,2,3,4,5", "$name": "x", "$IMAGENET_DIR": "/data"}
    for variable, value in values.items():
        line = line.replace(variable, value)
    configs = []
    monkeypatch.setattr(cli, "run_training", lambda args, config, default_output: configs.append(config))
    monkeypatch.setattr(cli, "require_gpu_for_nchw", lambda: None)  # --data_format NCHW, on a machine without GPUs
    monkeypatch.setattr(cli.console, "quiet_tensorflow", lambda verbose: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # --gpu sets it; monkeypatch restores it afterwards
    cli.imagenet_main(shlex.split(line)[2:])
    (config,) = configs
    assert (config.model.depth, config.model.epsilon, config.model.gate_scope) == (152, 1.8, "per_replica")


def test_ci_installs_what_the_readme_installs_export_included():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        install = next(line.split("#", 1)[0].strip() for line in f if line.startswith("pip install"))
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert install in [line.strip() for line in f]
    assert install == 'pip install -e ".[test,export]"'
