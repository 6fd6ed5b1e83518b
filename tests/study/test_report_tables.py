"""Report tables built from run folders: training loss beside val AP (the paper's Fig. 8)."""
from fromscratch.study.report import load_results, loss_table, write_report
from tests.study.test_study import _synthetic_study


def test_loss_table_takes_each_arms_longest_schedule_with_its_final_loss(tmp_path):
    sd = tmp_path / "study"
    _synthetic_study(sd, seed_std=1.0)
    plan, results = load_results(sd)
    lines = loss_table(plan, results)
    # 2x is the longest schedule: its 2 train lines have losses 1.0 and 0.5; the last 10% holds only 0.5
    assert "| all | scratch | 2x | 1 | 0.500 | 31.0 |" in lines
    assert "| 10 | pretrained | 2x | 1 | 0.500 | 1.5 |" in lines
    assert sum(1 for x in lines if x.startswith("| ") and "2x" in x) == 6  # 3 sizes x 2 arms
    assert "## Training loss and val AP" in write_report(sd)[0].read_text()
