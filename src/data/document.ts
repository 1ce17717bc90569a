/** A unit of text in a corpus. Documents are separated by the end-of-text token in prepared data. */
export interface Document {
  /** Stable identifier, e.g. a file path, `path:line` for JSONL, `path#row` for Parquet, `brown/ca01`. */
  id: string;
  /** The document's text (any Unicode). */
  text: string;
}

/** A streaming corpus: documents in a fixed, reproducible order. */
export type DocumentSource = AsyncIterable<Document>;
