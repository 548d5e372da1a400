"""The contract the three services share through the model volume.

model-sync, engine-builder and inference never import each other; they agree only on what
this package defines: where things live on the volume (:mod:`.layout`), how a model folder is
parsed and checked (:mod:`.model_folder`), how files are published so that no reader ever
sees a partial one (:mod:`.publish`), how content is fingerprinted (:mod:`.hashing`), and how
writers exclude each other (:mod:`.lock`).
"""
