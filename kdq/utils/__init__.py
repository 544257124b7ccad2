"""Small utilities every layer may use (standard library only at import time).

* ``atomic``: write a folder in a temporary sibling and rename it into place;
* ``cachedir``: kdq's user cache folder (the shared teacher cache lives there);
* ``errors``: ``CheckFailed``, an artifact that failed one of kdq's own checks;
* ``imports``: optional backends imported with an error that names the pip extra;
* ``jsonable``: one conversion of kdq's records into JSON types;
* ``lazy``: lazy package namespaces (PEP 562);
* ``versions``: installed library versions;
* ``weight_files``: which files of a model folder are weights, and their size.
"""
