"""tests/export.rs: `embed --out FILE.parquet` read back with pyarrow (and pandas) equals
FILE.npy + FILE.csv bit for bit."""
import csv, json, sys
import numpy as np

from skips import missing
try:
    import pyarrow.parquet as pq
except Exception as e:
    missing("parquet", "pyarrow not importable (%s)" % e)
    sys.exit(0)
pq_path, npy_path, csv_path = sys.argv[1:4]
t = pq.read_table(pq_path)
assert t.column_names == ["row", "id", "label", "embedding"], t.schema
import pyarrow as pa
typ = t.schema.field("embedding").type
assert pa.types.is_list(typ) and typ.value_type == pa.float32(), t.schema
want = np.load(npy_path)
rows = list(csv.DictReader(open(csv_path)))
try:
    import pandas as pd
except Exception as e:
    missing("pandas", "not importable (%s)" % e)
    df = None
else:
    df = pd.read_parquet(pq_path)
emb = np.stack(df["embedding"] if df is not None else t.column("embedding").to_pylist())
assert emb.dtype == np.float32 and emb.shape == want.shape, (emb.dtype, emb.shape, want.shape)
assert (emb == want).all(), "vectors differ"
col = lambda c: t.column(c).to_pylist()
assert col("row") == list(range(len(rows)))
assert col("id") == [r["id"] for r in rows]
assert col("label") == [r["label"] or None for r in rows]
meta = json.loads(t.schema.metadata[b"pretext"])
assert meta["rows"] == len(rows), meta
print("ok: %d rows of %d floats equal the .npy bit for bit (%s)" % (emb.shape[0], emb.shape[1], "pandas" if df is not None else "pyarrow"))
