"""The report's tables as plain data (``common.Table``), rendered to Markdown and HTML by
``render``, one module per kind of table:

- ``paper``: one paper's headline table, our cells beside the paper's values;
- ``cells``: every cell (clean, each attack, worst case, mCE, train s/epoch, flags);
- ``cam``: CAM localisation / sparsity / peakiness / ERF of the cells evaluated with masks;
- ``sweeps``: one method's settings side by side, the best for accuracy / robustness named;
- ``flags``: every gradient-masking flag with its detail, per cell and seed;
- ``perf``: the overhead table, the rest of perf.json and the step profile;
- ``provenance``: git SHAs, package versions and machines of the runs;

and what they share: ``common`` (the table record, the legend, one cell of ours with its marker)
and ``references`` (which cell a cell is compared with).
"""
