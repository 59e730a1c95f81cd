from unlearning.cli import entry

entry()
