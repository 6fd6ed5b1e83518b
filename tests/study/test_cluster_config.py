"""The README's cluster study is a valid study (its slurm: block included), without a cluster."""
import re

import yaml

from fromscratch.study.plan import Study
from tests.conftest import ROOT


def test_readme_cluster_study_validates():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n# configs/study_coco.yaml.*?\n(.*?)```", text, re.S)
    assert block, "README: the Clusters section's study example is missing"
    study = Study.model_validate(yaml.safe_load(block.group(1)))
    assert study.executor == "slurm" and study.slurm.nodes == 2 and study.slurm.gpus_per_node == 8
    assert study.slurm.extra_sbatch == ["--exclusive"] and study.arms[1].weights == "/weights/R-50.pth"
