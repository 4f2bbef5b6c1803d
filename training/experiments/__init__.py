"""The accuracy experiments beside the trainer: the benchmark (`bigru-train accuracy`), the ablation driver and
report, the cell comparison, the 1-NN DTW baseline, the tasks they share, and their reports and plots."""
