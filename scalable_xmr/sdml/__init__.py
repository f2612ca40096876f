"""The SDML path: one supervised autoencoder per modality against a fixed P (SDML, SIGIR 2019).

trainer (one modality's loop), joint (SDML-1, all modalities in one loop), evaluate (cross-modal
mAP from stored embeddings), job (the train_xmedia job), extend (the add-a-modality job).
"""
