"""The torch-free run side (the base install): predictors, model readers, data sets, evaluation, the CI gate."""
