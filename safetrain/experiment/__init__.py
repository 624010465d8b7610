"""Floor 5, one run: validation (checks only), the phases in order, the actions assembled in one
place, results, export and the LR finder's maths. Stands on everything below; entry points
(cli, predict, doctor, lr_find) stand on it."""
