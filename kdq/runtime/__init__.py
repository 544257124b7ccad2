"""The scoring runtime shared by kdq and every exported folder.

Standalone on purpose: these modules import the standard library, torch and transformers
only, never kdq (relative imports between themselves). ``kdq.export`` copies the package
whole into the exported folder as ``kdq_runtime/``, so training, evaluation, the teacher
cache, the export probe and the notebook's ``predict.py`` run the same code:

* ``constants``: the label schemes (LMSYS, WSDM: classes, A/B swap, submission, headline metric), TTA modes, file names;
* ``template``: arena row → token ids;
* ``csvfile``: the one CSV rule kdq and predict.py read by (a BOM, CRLF, quoted line breaks, header names);
* ``batching``: length-sorted, dynamically padded scoring;
* ``tta``: swap TTA (full: original and swapped rows in one length-sorted pass; gated);
* ``checksums``: the folder's manifest and sha256 checks (also what ``kdq.verify`` runs);
* ``dtypes``: the dtype rule (fp16 on CUDA, bf16 only where training asks and the GPU has it, fp32 on CPU);
* ``versions``: installed package versions;
* ``predict``: the notebook's command line.
"""
