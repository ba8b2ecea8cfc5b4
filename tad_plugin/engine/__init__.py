"""The trajectory-matching engine shared by the MTT, FTD, DATM and ATT adapters (ConvNet, DSA, ZCA, experts,
distillation, evaluation)."""
