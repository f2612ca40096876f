"""Pure maths: losses, retrieval metrics (mAP, PR, R@K); chunked functions of tensors."""
