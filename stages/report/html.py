"""The report page. Captions, labels, concept texts, file names and error reasons come from models
and users' files, so every value is escaped by Jinja2's autoescaping: nothing in the data can add
markup to the page. The page has no script of its own, and its Content-Security-Policy forbids
every script, as a second wall."""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

_ENVIRONMENT = jinja2.Environment(
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
)

PAGE = _ENVIRONMENT.from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" \
content="script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; font-size: 0.85rem; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.source { color: #555; font-size: 0.85rem; overflow-wrap: anywhere; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1rem; align-items: start; }
figure.plot { margin: 0; } figure.plot img { width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.8rem; color: #555; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1rem; }
.item { border: 1px solid #ccc; border-radius: 4px; padding: 0.5rem; overflow-wrap: anywhere; }
.concepts { padding-left: 1.1rem; margin: 0.3rem 0; font-size: 0.85rem; }
.concepts li { margin-bottom: 0.3rem; }
.numbers { font-variant-numeric: tabular-nums; }
.item img.thumb { width: 100%; height: 220px; object-fit: contain; background: #f4f4f4; display: block; \
margin-bottom: 0.3rem; }
.item audio { width: 100%; }
.caption { font-style: italic; margin: 0.3rem 0; }
.missing { color: #a33; }
img.example { height: 72px; margin-right: 0.3rem; border: 1px solid #ddd; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="source">{{ source }}</p>
{% for note in notes %}
<p>{{ note }}</p>
{% endfor %}

<h2>Summary</h2>
<table id="counts">
<tr><th>stage</th><th>count</th></tr>
{% for what, n in counts %}
<tr><td>{{ what }}</td><td class="n">{{ n }}</td></tr>
{% endfor %}
</table>

<h2>Errors and drops by kind</h2>
{% if problems %}
<table id="problems">
<tr><th>kind</th><th>count</th><th>examples (file: reason)</th></tr>
{% for problem in problems %}
<tr><td>{{ problem.kind }}</td><td class="n">{{ problem.count }}</td><td>
{% for example in problem.examples %}
<div><span class="source">{{ example.file }}</span>: {{ example.reason }}</div>
{% endfor %}
</td></tr>
{% endfor %}
</table>
{% else %}
<p>None.</p>
{% endif %}

<h2>Plots</h2>
<div class="plots">
{% for plot in plots %}
<figure class="plot" id="plot-{{ plot.name }}"><img src="{{ plot.file }}" alt="{{ plot.title }}">\
<figcaption>{{ plot.caption }}</figcaption></figure>
{% endfor %}
</div>
{% macro clip_table(clips, table_id) %}
<table id="{{ table_id }}">
<tr><th>rank</th><th>clip</th><th>uses</th><th>listen</th></tr>
{% for clip in clips %}
<tr><td class="n">{{ loop.index }}</td><td><span class="source">{{ clip.clip_id }}\
{% if clip.source_uri %}<br>{{ clip.source_uri }}{% if clip.start_s is not none %} at \
{{ "%.1f"|format(clip.start_s) }} s{% endif %}{% endif %}\
{% if clip.get("prompt") %}<br>prompt: {{ clip.prompt }}{% endif %}</span></td>
<td class="n">{{ clip.uses }}</td><td>{% if clip.audio %}\
<audio controls preload="metadata" src="{{ clip.audio }}"></audio>{% else %}\
<span class="missing">{{ clip.problem }}</span>{% endif %}</td></tr>
{% endfor %}
</table>
{% endmacro %}
{% if top_clips is not none %}

<h2>Most used clips</h2>
<p>{{ top_clips_note }}</p>
{{ clip_table(top_clips, "top-clips") }}
{% endif %}
{% if generated_clips %}

<h2>Generated clips used</h2>
<p>{{ generated_clips_note }}</p>
{{ clip_table(generated_clips, "generated-clips") }}
{% endif %}
{% if missing_sounds is not none %}

<h2>Missing sounds</h2>
<p>{{ missing_note }}</p>
<table id="missing-sounds">
<tr><th>rank</th><th>sound</th><th>concepts</th><th>below floor / none audible</th><th>best cosine</th>\
<th>heard in</th></tr>
{% for sound in missing_sounds %}
<tr><td class="n">{{ loop.index }}</td><td>{{ sound.text }}{% if sound.texts > 1 %}<br>\
<span class="source">{{ sound.texts }} texts: {{ sound.member_texts|join("; ") }}</span>{% endif %}</td>
<td class="n">{{ sound.requests }}</td><td class="n">{{ sound.below_min_cosine }} / {{ sound.no_usable_clip }}</td>
<td class="n">{% if sound.best_cosine is not none %}{{ "%.3f"|format(sound.best_cosine) }}{% else %}-{% endif %}</td>
<td>{% for example in sound.examples %}{% if example.thumbnail %}\
<img class="example" src="{{ example.thumbnail }}" alt="{{ example.name }}" title="{{ example.name }}">\
{% else %}<span class="missing">{{ example.problem }}</span>{% endif %}{% endfor %}</td></tr>
{% endfor %}
</table>
{% endif %}
{% if gallery is not none %}

<h2>Gallery</h2>
<p>{{ gallery_note }}</p>
<div class="gallery">
{% for item in gallery %}
<div class="item" id="item-{{ loop.index }}">
{% if item.shown_for %}
<p class="numbers"><b>{{ item.shown_for }}</b></p>
{% endif %}
{% if item.thumbnail %}
<img class="thumb" src="{{ item.thumbnail }}" alt="{{ item.image_name }}">
{% endif %}
{% if item.audio %}
<audio controls preload="metadata" src="{{ item.audio }}"></audio>
{% endif %}
{% for problem in item.problems %}
<p class="missing">{{ problem }}</p>
{% endfor %}
<p class="caption">{{ item.caption if item.caption is not none else "" }}</p>
<p class="source">{{ item.image_name }}<br>key {{ item.key }}, {{ item.vlm }}, shard {{ item.shard }}\
{% if item.mix_lufs is not none %}, {{ "%.1f"|format(item.mix_lufs) }} LUFS{% endif %}\
{% if item.text_audio is not none %}, text_audio {{ "%.3f"|format(item.text_audio) }}{% endif %}\
{% if item.image_audio is not none %}, image_audio {{ "%.3f"|format(item.image_audio) }}{% endif %}</p>
<ul class="concepts">
{% for concept in item.concepts %}
<li><b>{{ concept.label }}</b>: {% if concept.text is not none %}{{ concept.text }}\
{% else %}<i>the image, mapped into CLAP's audio space (no text)</i>{% endif %}<br>
<span class="source">clip {{ concept.clip_id }}\
{% if concept.clip_source_uri %}, {{ concept.clip_source_uri }}\
{% if concept.clip_start_s is not none %} at {{ "%.1f"|format(concept.clip_start_s) }} s{% endif %}\
{% endif %}</span><br>
<span class="numbers">\
{% if concept.cosine is not none %}cosine {{ "%.3f"|format(concept.cosine) }}{% endif %}\
{% if concept.gain_db is not none %}, gain {{ "%+.1f"|format(concept.gain_db) }} dB{% endif %}\
</span></li>
{% endfor %}
</ul>
</div>
{% endfor %}
</div>
{% endif %}
</body>
</html>
"""
)


@dataclass(frozen=True)
class Plot:
    name: str
    file: str
    title: str
    caption: str


@dataclass
class GalleryEntry:
    """One gallery item as shown: the manifest's fields, and the page-relative paths of its media
    (None where they could not be read, with the reason in `problems`)."""

    key: str
    vlm: str
    shard: str
    image_name: str
    caption: str | None
    mix_lufs: float | None
    concepts: list[dict]
    text_audio: float | None = None
    image_audio: float | None = None
    # Why the sample is shown ("lowest image_audio"); None for the random choice.
    shown_for: str | None = None
    thumbnail: str | None = None
    audio: str | None = None
    problems: list[str] = field(default_factory=list)


def render_page(
    title: str,
    source: str,
    counts: list[tuple[str, int]],
    problems: list[dict],
    plots: list[Plot],
    notes: list[str] = (),
    gallery: list[GalleryEntry] | None = None,
    gallery_note: str = "",
    top_clips: list[dict] | None = None,
    top_clips_note: str = "",
    missing_sounds: list[dict] | None = None,
    missing_note: str = "",
    generated_clips: list[dict] | None = None,
    generated_clips_note: str = "",
) -> str:
    return PAGE.render(
        title=title,
        source=source,
        counts=counts,
        problems=problems,
        plots=plots,
        notes=list(notes),
        gallery=gallery,
        gallery_note=gallery_note,
        top_clips=top_clips,
        top_clips_note=top_clips_note,
        missing_sounds=missing_sounds,
        missing_note=missing_note,
        generated_clips=generated_clips,
        generated_clips_note=generated_clips_note,
    )
