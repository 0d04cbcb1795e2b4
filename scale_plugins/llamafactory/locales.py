"""Web UI labels of the SCALe controls, in LLaMA-Factory's five UI languages.

The English help of every ``scale_*`` field is the core's own help text (one definition of the options);
the other languages are translations of it. Gradio renders ``info`` as HTML, so every text is escaped:
``<think>`` must show as text, not vanish as an unknown tag.
"""

from __future__ import annotations

import html
from typing import Any

from ..core import option_fields

LANGUAGES = ("en", "ru", "zh", "ko", "ja")

#: Options the UI does not show: LLaMA-Factory always marks unsupervised labels with -100.
HIDDEN_OPTIONS = ("ignore_index",)

LOSS_SELECTOR = "sft_loss"  # elem name of the loss dropdown (id "train.sft_loss")
SETTINGS_TAB = "scale_tab"  # elem name of the SCALe settings accordion

_SELECTOR = {
    "en": (
        "Loss function",
        "Training loss of the SFT stage. SCALe weights the <think> and <answer> segments on a schedule (settings "
        "below); DFT, ASFT and EAFT are LLaMA-Factory's own losses (set their alpha in the extra arguments).",
    ),
    "ru": (
        "Функция потерь",
        "Функция потерь этапа SFT. SCALe взвешивает сегменты <think> и <answer> по расписанию (настройки ниже); "
        "DFT, ASFT и EAFT — собственные потери LLaMA-Factory (их alpha задаётся в дополнительных аргументах).",
    ),
    "zh": (
        "损失函数",
        "SFT 阶段的训练损失。SCALe 按调度对 <think> 与 <answer> 片段加权（设置见下方）；"
        "DFT、ASFT、EAFT 为 LLaMA-Factory 自带的损失（其 alpha 在额外参数中设置）。",
    ),
    "ko": (
        "손실 함수",
        "SFT 단계의 학습 손실. SCALe는 <think>와 <answer> 구간에 스케줄에 따라 가중치를 줍니다(아래 설정). "
        "DFT, ASFT, EAFT는 LLaMA-Factory 자체 손실입니다(alpha는 추가 인자에서 설정).",
    ),
    "ja": (
        "損失関数",
        "SFT ステージの学習損失。SCALe は <think> と <answer> のセグメントをスケジュールに従って重み付けします"
        "（設定は下）。DFT・ASFT・EAFT は LLaMA-Factory 独自の損失です（alpha は追加引数で指定）。",
    ),
}

_TAB = {"en": "SCALe settings", "ru": "Настройки SCALe", "zh": "SCALe 设置", "ko": "SCALe 설정", "ja": "SCALe 設定"}

# option name -> language -> (label, help). English help is None: it is the core's help text.
_OPTIONS: dict[str, dict[str, tuple[str, str | None]]] = {
    "think_open": {
        "en": ("Think opening tag", None),
        "ru": (
            "Открывающий тег рассуждения",
            "Тег начала сегмента рассуждения (строка; один спецтокен или несколько BPE-частей).",
        ),
        "zh": ("思考起始标签", "推理片段的起始标签（字符串；可为单个特殊 token，也可为多个 BPE 片段）。"),
        "ko": ("사고 시작 태그", "추론 구간의 시작 태그 (문자열; 특수 토큰 하나 또는 여러 BPE 조각)."),
        "ja": ("思考開始タグ", "推論セグメントの開始タグ（文字列。単一の特殊トークンでも複数の BPE ピースでも可）。"),
    },
    "think_close": {
        "en": ("Think closing tag", None),
        "ru": (
            "Закрывающий тег рассуждения",
            "Тег конца сегмента рассуждения. Если открывающего тега нет в обучаемом тексте (шаблон ставит его в "
            "промпт), рассуждением считается всё до закрывающего тега.",
        ),
        "zh": (
            "思考结束标签",
            "推理片段的结束标签。若监督文本中没有起始标签（模板把它放在提示中），结束标签之前的内容都算作推理。",
        ),
        "ko": (
            "사고 종료 태그",
            "추론 구간의 종료 태그. 감독 텍스트에 시작 태그가 없으면(템플릿이 프롬프트에 넣는 경우) 종료 태그 앞의 "
            "모든 토큰이 추론으로 처리됩니다.",
        ),
        "ja": (
            "思考終了タグ",
            "推論セグメントの終了タグ。教師テキストに開始タグがない場合（テンプレートがプロンプトに入れる場合）、"
            "終了タグより前はすべて推論として扱います。",
        ),
    },
    "think_close_segment": {
        "en": ("Closing tag trained as", None),
        "ru": (
            "Закрывающий тег обучается как",
            "К какому сегменту относятся токены закрывающего тега: 'think' (закрывающий тег завершает рассуждение и "
            "весит как токен рассуждения, 1/|think| веса рассуждения при нормализации 'sample'), 'answer' (решение "
            "закончить рассуждение обучается с весом ответа и усредняется вместе с токенами ответа) или 'own' "
            "(отдельный сегмент 'close', усредняется как остальные и на каждом шаге имеет вес close_weight, который "
            "добавляется к слагаемым рассуждения и ответа; docs/concepts.md). Пустые блоки рассуждения в любом случае "
            "следуют empty_think.",
        ),
        "zh": (
            "闭合标签归入",
            "闭合标签的 token 属于哪个片段：'think'（闭合标签结束推理，权重与推理 token 相同，在 'sample' 归一化下为"
            "思考权重的 1/|think|）、'answer'（结束推理这一决定以答案的权重训练，并与答案 token 一起求平均）或 'own'"
            "（单独的片段 'close'，与其他片段一样求平均，每一步的权重为 close_weight，加在思考和答案两项之上；"
            "docs/concepts.md）。空思考块无论如何都遵循 empty_think。",
        ),
        "ko": (
            "닫는 태그 학습 구간",
            "닫는 태그의 토큰이 속하는 구간: 'think'(닫는 태그가 추론을 끝내며 추론 토큰과 같은 가중치, 'sample' "
            "정규화에서 사고 가중치의 1/|think|), 'answer'(추론을 끝내는 결정을 답변의 가중치로 학습하고 답변 "
            "토큰과 함께 평균) 또는 'own'(별도 구간 'close', 다른 구간처럼 평균하며 매 스텝 close_weight 가중치로 "
            "사고·답변 항에 더해짐; docs/concepts.md). 빈 사고 블록은 어느 경우든 empty_think를 따릅니다.",
        ),
        "ja": (
            "終了タグの扱い",
            "終了タグのトークンが属するセグメント：'think'（終了タグは推論を終え、推論トークンと同じ重み。'sample' "
            "正規化では思考の重みの 1/|think|）、'answer'（推論を終える判断を回答の重みで学習し、回答トークンと"
            "一緒に平均する）または 'own'（独立したセグメント 'close'。他と同様に平均し、各ステップで close_weight "
            "の重みを思考と回答の項に加える。docs/concepts.md）。空の思考ブロックはどちらの場合も empty_think に従います。",
        ),
    },
    "close_weight": {
        "en": ("Closing tag weight", None),
        "ru": (
            "Вес закрывающего тега",
            "При think_close_segment 'own': постоянный вес сегмента закрывающего тега (его среднее CE по примеру, как "
            "у сегмента), добавляется к потерям поверх рассуждения и ответа (их веса остаются 1 − w_answer и "
            "w_answer). Значение, отличное от значения по умолчанию, при другом think_close_segment — ошибка.",
        ),
        "zh": (
            "闭合标签权重",
            "当 think_close_segment 为 'own' 时：闭合标签片段的恒定权重（其每个样本的平均 CE，与片段相同），加在思考和"
            "答案之上（二者权重仍为 1 − w_answer 和 w_answer）。在其他 think_close_segment 下设为非默认值会报错。",
        ),
        "ko": (
            "닫는 태그 가중치",
            "think_close_segment가 'own'일 때: 닫는 태그 구간의 고정 가중치(샘플별 평균 CE, 구간과 동일). 사고와 "
            "답변 위에 손실로 더해집니다(두 가중치는 1 − w_answer, w_answer 그대로). 다른 think_close_segment에서 "
            "기본값이 아닌 값을 주면 오류입니다.",
        ),
        "ja": (
            "終了タグの重み",
            "think_close_segment が 'own' のとき：終了タグのセグメントの一定の重み（サンプルごとの平均 CE、セグメント"
            "と同じ）。思考と回答の上に損失として加える（両者の重みは 1 − w_answer と w_answer のまま）。他の "
            "think_close_segment で既定値以外を指定するとエラー。",
        ),
    },
    "schedule": {
        "en": ("Weight schedule", None),
        "ru": (
            "Расписание весов",
            "Как вес ответа меняется по ходу обучения p = step / (max_steps - 1): 0 на первом шаге оптимизации, 1 на "
            "последнем (docs/concepts.md).",
        ),
        "zh": (
            "权重调度",
            "答案权重随训练进度 p = step / (max_steps - 1) 的变化方式：第一个优化步为 0，最后一个为 1（docs/concepts.md）。",
        ),
        "ko": (
            "가중치 스케줄",
            "학습 진행도 p = step / (max_steps - 1)에 따라 답변 가중치가 변하는 방식: 첫 최적화 스텝에서 0, 마지막 "
            "스텝에서 1 (docs/concepts.md).",
        ),
        "ja": (
            "重みスケジュール",
            "学習進捗 p = step / (max_steps - 1) に応じた回答重みの変化のしかた。最初の最適化ステップで 0、最後で 1"
            "（docs/concepts.md）。",
        ),
    },
    "answer_weight_start": {
        "en": ("Answer weight at start", None),
        "ru": (
            "Вес ответа в начале",
            "Вес ответа при p = 0, на первом шаге оптимизации (вес рассуждения = 1 − вес ответа).",
        ),
        "zh": ("初始答案权重", "p = 0（第一个优化步）时的答案权重（思考权重 = 1 − 答案权重）。"),
        "ko": ("시작 답변 가중치", "p = 0(첫 최적화 스텝)일 때의 답변 가중치 (사고 가중치 = 1 − 답변 가중치)."),
        "ja": ("開始時の回答重み", "p = 0（最初の最適化ステップ）での回答重み（思考の重み = 1 − 回答重み）。"),
    },
    "answer_weight_end": {
        "en": ("Answer weight at end", None),
        "ru": (
            "Вес ответа в конце",
            "Вес ответа при p = 1, на последнем шаге оптимизации (вес рассуждения = 1 − вес ответа).",
        ),
        "zh": ("最终答案权重", "p = 1（最后一个优化步）时的答案权重（思考权重 = 1 − 答案权重）。"),
        "ko": ("종료 답변 가중치", "p = 1(마지막 최적화 스텝)일 때의 답변 가중치 (사고 가중치 = 1 − 답변 가중치)."),
        "ja": ("終了時の回答重み", "p = 1（最後の最適化ステップ）での回答重み（思考の重み = 1 − 回答重み）。"),
    },
    "step_at": {
        "en": ("Step point", None),
        "ru": (
            "Точка скачка",
            "Для расписания 'step': прогресс, на котором вес ответа переходит от начального к конечному.",
        ),
        "zh": ("阶跃位置", "仅用于 'step' 调度：答案权重从初始值跳到最终值时的训练进度。"),
        "ko": ("스텝 지점", "'step' 스케줄 전용: 답변 가중치가 시작값에서 종료값으로 바뀌는 진행도."),
        "ja": ("ステップ位置", "'step' スケジュール用：回答重みが開始値から終了値に切り替わる進捗。"),
    },
    "normalization": {
        "en": ("Normalization", None),
        "ru": (
            "Нормализация",
            "'sample': средние по сегментам внутри каждого примера, затем среднее по примерам шага оптимизации "
            "(не зависит от длины; по умолчанию в SCALe). 'token': одно взвешенное среднее по всем обучаемым "
            "токенам шага (при равных весах — обычная функция потерь).",
        ),
        "zh": (
            "归一化方式",
            "'sample'：先在每个样本内对各片段求平均，再在优化步内对样本求平均（与长度无关，SCALe 默认）。"
            "'token'：对该步所有监督 token 做一次加权平均（权重相等时即标准损失）。",
        ),
        "ko": (
            "정규화",
            "'sample': 샘플마다 구간별 평균을 낸 뒤 최적화 스텝의 샘플들에 대해 평균 (길이 무관, SCALe 기본값). "
            "'token': 스텝의 모든 감독 토큰에 대한 하나의 가중 평균 (가중치가 같으면 기본 손실과 동일).",
        ),
        "ja": (
            "正規化",
            "'sample'：サンプルごとにセグメント平均を取り、最適化ステップ内のサンプルで平均（長さに依存しない、"
            "SCALe の既定）。'token'：ステップの全教師トークンに対する 1 つの重み付き平均（重みが等しければ通常の損失と一致）。",
        ),
    },
    "extra_segments": {
        "en": ("Extra segments", None),
        "ru": (
            "Дополнительные сегменты",
            "Дополнительные сегменты с тегами, каждый {name, open, close, weight_start, weight_end} (или "
            "'name:<open>:</close>:w0:w1'); их токены изымаются из объемлющего сегмента. В этом поле: по одному в "
            "строке, name:<open>:</close>:weight_start:weight_end.",
        ),
        "zh": (
            "额外片段",
            "额外的带标签片段，每个为 {name, open, close, weight_start, weight_end}（或 'name:<open>:</close>:w0:w1'）；"
            "其 token 从外层片段中划出。此框中每行一个：name:<open>:</close>:weight_start:weight_end。",
        ),
        "ko": (
            "추가 세그먼트",
            "태그가 있는 추가 구간, 각각 {name, open, close, weight_start, weight_end} (또는 "
            "'name:<open>:</close>:w0:w1'); 해당 토큰은 바깥 구간에서 분리됩니다. 이 칸에서는 한 줄에 하나: "
            "name:<open>:</close>:weight_start:weight_end.",
        ),
        "ja": (
            "追加セグメント",
            "タグ付きの追加セグメント。それぞれ {name, open, close, weight_start, weight_end}（または "
            "'name:<open>:</close>:w0:w1'）。そのトークンは外側のセグメントから切り出されます。この欄では 1 行に 1 つ："
            "name:<open>:</close>:weight_start:weight_end。",
        ),
    },
    "empty_think": {
        "en": ("Empty think blocks", None),
        "ru": (
            "Пустые блоки рассуждения",
            "Блоки рассуждения, в которых между тегами только пробельные символы (например, "
            "'<think>\\n\\n</think>\\n\\n' перед ответом без рассуждения, как добавляют шаблоны Qwen3): 'ignore' "
            "исключает их токены из функции потерь (считаются в scale/empty_think_blocks), 'think' обучает их как "
            "рассуждение (при нормализации 'sample' каждый такой блок весит столько же, сколько полное рассуждение).",
        ),
        "zh": (
            "空思考块",
            "标签之间只有空白字符的思考块（例如 Qwen3 模板在没有推理过程的答案前添加的 "
            "'<think>\\n\\n</think>\\n\\n'）：'ignore' 将其 token 排除在损失之外（计入 scale/empty_think_blocks），"
            "'think' 将其作为思考训练（在 'sample' 归一化下，每个空块与完整推理的权重相同）。",
        ),
        "ko": (
            "빈 사고 블록",
            "태그 사이에 공백만 있는 사고 블록(예: Qwen3 템플릿이 추론 없는 답변 앞에 추가하는 "
            "'<think>\\n\\n</think>\\n\\n'): 'ignore'는 해당 토큰을 손실에서 제외하고(scale/empty_think_blocks에 "
            "집계), 'think'는 사고로 학습합니다('sample' 정규화에서는 빈 블록 하나가 전체 추론과 같은 가중치를 가짐).",
        ),
        "ja": (
            "空の思考ブロック",
            "タグの間が空白だけの思考ブロック（例：Qwen3 テンプレートが推論のない回答の前に付ける "
            "'<think>\\n\\n</think>\\n\\n'）：'ignore' はそのトークンを損失から除外し（scale/empty_think_blocks に"
            "計上）、'think' は思考として学習します（'sample' 正規化では空ブロック 1 つが完全な推論と同じ重みになる）。",
        ),
    },
    "on_missing_think": {
        "en": ("Missing think tags", None),
        "ru": (
            "Нет тегов рассуждения",
            "Что делать, если в шаге оптимизации есть обучаемые токены, но нет токенов рассуждения: 'warn' "
            "(предупредить один раз и считать в scale/steps_without_think), 'error' или 'ignore'.",
        ),
        "zh": (
            "缺少思考标签时",
            "当某个优化步有监督 token 但没有思考 token 时的处理：'warn'（警告一次，并计入 "
            "scale/steps_without_think）、'error' 或 'ignore'。",
        ),
        "ko": (
            "사고 태그 누락 시",
            "최적화 스텝에 감독 토큰은 있지만 사고 토큰이 없을 때: 'warn'(한 번 경고하고 "
            "scale/steps_without_think에 집계), 'error', 'ignore'.",
        ),
        "ja": (
            "思考タグ欠落時",
            "最適化ステップに教師トークンはあるが思考トークンがない場合の動作：'warn'（一度だけ警告し "
            "scale/steps_without_think に計上）、'error'、'ignore'。",
        ),
    },
}

_LIST_FORMAT = " In this box: one per line, {}."


def _entry(label: str, info: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label}
    if info is not None:
        out["info"] = html.escape(info, quote=False)
    return out


def ui_options() -> list[Any]:
    """The core's options the UI shows, in definition order."""
    return [opt for opt in option_fields() if opt.name not in HIDDEN_OPTIONS]


def locales() -> dict[str, dict[str, dict[str, Any]]]:
    """Entries for ``llamafactory.webui.locales.LOCALES``: elem name -> language -> component properties.

    An option without translations (one added to the core later) falls back to its name and English help in
    every language, so the UI keeps working; the tests require translations for every option.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {
        LOSS_SELECTOR: {lang: _entry(*_SELECTOR[lang]) for lang in LANGUAGES},
        SETTINGS_TAB: {lang: _entry(_TAB[lang], None) for lang in LANGUAGES},
    }
    for opt in ui_options():
        english = opt.help + (_LIST_FORMAT.format(opt.entry_syntax) if opt.is_list else "")
        texts = _OPTIONS.get(opt.name, {})
        entry = {}
        for lang in LANGUAGES:
            label, info = texts.get(lang, texts.get("en", (opt.name, None)))
            entry[lang] = _entry(label, english if info is None or lang not in texts else info)
        out["scale_" + opt.name] = entry
    return out


def translated_options() -> set[str]:
    """Names of the options with a label and help in all five languages."""
    return {name for name, texts in _OPTIONS.items() if all(lang in texts for lang in LANGUAGES)}
