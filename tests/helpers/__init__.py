"""What the tests share: paths, a local Hub server (`hub_server`), fairseq checkpoints built in the
test (`fairseq_checkpoints`) and the torchrun pretraining script (`pretrain_run`)."""

from pathlib import Path

HELPERS = Path(__file__).resolve().parent
TESTS = HELPERS.parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
