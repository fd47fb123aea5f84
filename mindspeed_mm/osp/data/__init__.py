"""Training data: OSP annotations (`annotations`), Min-Max Token buckets (`buckets`), the grouped resumable sampler
(`sampler`), the dataset that decodes items at their bucket's shape (`dataset`), the feature cache (`cache`),
`osp data scan` (`scan`), video I/O (`video_io`) and the `osp data` command (`cli`). See docs/data.md."""
