"""Pure tensor operations shared by forms and schedules: resizing a low-rank pair, the simplex projection."""
