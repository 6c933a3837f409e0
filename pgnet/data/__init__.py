"""Datasets, transforms and loaders for salient object detection.

Public API (import from the submodules; this package imports nothing itself):

- ``pgnet.data.io``: ``read_image(path, max_side=None)`` -> H×W×3 uint8 RGB (EXIF applied; reduced
  JPEG decode down to ``max_side``); ``read_mask(path)`` -> H×W uint8 0..255; ``binarize_mask(mask)``
  -> ``mask > 128`` (the evaluator's rule); ``ImageReadError``; ``IMAGE_EXTENSIONS``,
  ``MASK_EXTENSIONS``; ``list_images(file_folder_or_glob, recursive=False)``.
- ``pgnet.data.registry``: ``resolve_dataset(name, root)`` -> ``DatasetSpec`` (image_dir, mask_dir,
  expected_count, parts of a union such as DIS-TE, metrics reported on it); ``pair_files(image_dir,
  mask_dir)`` -> ``Pairing`` (pairs, unpaired_images, unpaired_masks, duplicates);
  ``pair_dataset(spec)`` (every part's pairs); ``detect_datasets(root)``; ``find_datasets(root,
  names=None)`` (the names, or every layout detected); ``dataset_pairs(specs)``; ``known_dataset_names()``.
- ``pgnet.data.entry``: ``DatasetEntry``, the one schema of a config's dataset entry (fields and
  defaults), ``ENTRY_DEFAULTS``.
- ``pgnet.data.datasets``: ``SODDataset`` (items: ``image`` 3×H×W, ``mask`` 1×H×W in [0, 1],
  ``name``, ``size`` original (H, W); None for a bad file), ``build_dataset(config, transform)``,
  ``build_train_dataset(configs, transform)`` (``repeat`` factors), name ``synthetic`` for
  ``SyntheticDataset``; ``EmptyDatasetError``.
- ``pgnet.data.transforms``: ``build_train_transform(preset='official', size=1024, mean=None,
  std=None, **options)``, ``build_eval_transform(size, fast_decode=False)`` (the official test
  protocol unless ``fast_decode``), ``PRESETS``, ``denormalize(image, mean, std)``.
- ``pgnet.data.preprocessing``: ``OFFICIAL_MEAN``, ``OFFICIAL_STD``, ``IMAGENET_MEAN``,
  ``IMAGENET_STD``, ``normalization_stats(normalization, mean, std)`` (the one place statistics are
  resolved), ``Preprocessing`` (mean, std, eval_size; stored in checkpoints),
  ``normalize_then_resize(image, size, mean, std)`` (the official test preprocessing).
- ``pgnet.data.loader``: ``MultiScaleCollate(sizes)``, ``collate_eval``, ``build_train_loader(dataset,
  batch_size, num_workers, seed, distributed, sizes)``, ``build_eval_loader(dataset)``,
  ``set_loader_epoch(loader, epoch)``, ``SkipCounter``; train batches carry ``skipped`` (int).
- ``pgnet.data.synthetic``: ``make_sample(seed, size)`` -> (image H×W×3 uint8, mask H×W uint8 0/255),
  ``SyntheticDataset(n, size, seed, transform)``.
- ``pgnet.data.cache``: ``build_cache(root, pairs, long_side)`` -> ``CacheReport`` (``describe()``),
  ``find_cache(root, min_long_side)``.
- ``pgnet.data.verify``: ``check_dataset(spec, jobs, strict_counts)`` -> ``DatasetReport``,
  ``format_report(report)``, ``format_summary(reports)`` (``datasets/verify.py``).

Config shape the builders accept (``data:`` section of a training config)::

    train: [{name: DUTS-TR, root: data/DUTS, repeat: 1}, {name: HRSOD-TR, root: data/HRSOD, repeat: 4}]
    val: [{name: DUTS-TE, root: data/DUTS}]
    preset: official        # build_train_transform(preset, size)
    size: 1024
    multiscale: [960, 992, 1024, 1056, 1088]
    batch_size: 4
    num_workers: 4
"""
