"""What an encoded example is: token ids and labels, ``IGNORE_INDEX`` where there is no loss."""

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and transformers' loss) skips

Encoded = dict[str, list[int]]
