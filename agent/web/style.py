"""The page's stylesheet (cards, attention bars, persona panel, change summary), kept in Python
so that it ships with the package without package-data settings."""

CSS = """
#plural-top { align-items: end; }
#plural-notice { min-height: 1.6em; padding: 4px 10px; border-left: 4px solid #d97706; background: #fffbeb;
  border-radius: 4px; color: #1f2937; }
.pl-slot { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 8px;
  background: var(--background-fill-primary); }
.pl-card { font-size: 0.92em; line-height: 1.35; }
.pl-card-head { font-weight: 600; font-size: 1.05em; margin-bottom: 4px; }
.pl-rank { color: #6b7280; margin-right: 2px; }
.pl-reacted { margin-left: 6px; font-size: 0.78em; font-weight: 500; padding: 1px 6px; border-radius: 8px; }
.pl-like { background: #dcfce7; color: #166534; }
.pl-dislike { background: #fee2e2; color: #991b1b; }
.pl-cats { margin: 2px 0 6px 0; }
.pl-chip { display: inline-block; font-size: 0.78em; padding: 1px 7px; margin: 0 4px 3px 0; border-radius: 9px;
  background: #f3f4f6; color: #374151; border: 1px solid #e5e7eb; }
.pl-persona { margin-bottom: 4px; }
.pl-attention { margin: 4px 0 6px 0; }
.pl-att { display: flex; align-items: center; gap: 6px; font-size: 0.8em; color: #4b5563; }
.pl-att.pl-resp { color: #111827; font-weight: 600; }
.pl-att-name { flex: 0 0 42%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.pl-att-bar { flex: 1 1 auto; height: 8px; background: #f3f4f6; border-radius: 4px; overflow: hidden; }
.pl-att-bar > span { display: block; height: 100%; border-radius: 4px; }
.pl-att-val { flex: 0 0 34px; text-align: right; font-variant-numeric: tabular-nums; }
.pl-label { font-size: 0.78em; text-transform: uppercase; letter-spacing: 0.04em; color: #6b7280; }
.pl-evidence ul { margin: 2px 0 6px 16px; padding: 0; }
.pl-evidence li { margin: 0; font-size: 0.88em; }
.pl-expl { font-size: 0.86em; color: #374151; }
.pl-src { display: inline-block; font-size: 0.72em; font-weight: 600; text-transform: uppercase; padding: 0 5px;
  border-radius: 4px; margin-right: 3px; vertical-align: 1px; }
.pl-src-template { background: #e5e7eb; color: #374151; }
.pl-src-model { background: #ede9fe; color: #5b21b6; }
.pl-panel { display: flex; flex-direction: column; gap: 6px; }
.pl-prow { padding: 6px 8px; border-radius: 8px; border: 1px solid var(--border-color-primary); }
.pl-prow.pl-highlight { border-color: #d97706; box-shadow: 0 0 0 2px #fde68a; }
.pl-prow-head { display: flex; align-items: center; gap: 6px; }
.pl-dot { width: 10px; height: 10px; border-radius: 50%; display: inline-block; }
.pl-weight { font-variant-numeric: tabular-nums; font-weight: 600; }
.pl-version, .pl-textsrc { font-size: 0.78em; color: #6b7280; }
.pl-pdesc { font-size: 0.86em; color: #4b5563; margin-top: 2px; }
.pl-change-title { font-weight: 600; margin: 8px 0 4px 0; }
.pl-change { padding: 8px 10px; border-radius: 8px; background: #fffbeb; border: 1px solid #fde68a;
  font-size: 0.9em; display: flex; flex-direction: column; gap: 3px; }
.pl-change-weight { font-variant-numeric: tabular-nums; }
.pl-change-guard { color: #92400e; }
.pl-change-why, .pl-change-kept { color: #6b7280; font-size: 0.92em; }
"""
