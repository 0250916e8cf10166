"""The demo's embedded data: raw web-like documents for the corpus stage, and tool-use conversations for SFT.

Everything is generated from fixed templates and a fixed seed, so the demo needs no network and no files.
"""

from __future__ import annotations

import json
import random

CITIES = ["Shanghai", "Beijing", "Paris", "London", "Tokyo", "Berlin", "Madrid", "Cairo", "Lima", "Oslo"]
CITIES_ZH = {"Shanghai": "上海", "Beijing": "北京", "Paris": "巴黎", "London": "伦敦", "Tokyo": "东京",
             "Berlin": "柏林", "Madrid": "马德里", "Cairo": "开罗", "Lima": "利马", "Oslo": "奥斯陆"}
WEATHER = ["sunny", "rainy", "cloudy", "windy", "mild", "cold", "warm", "foggy"]
WEATHER_ZH = ["晴朗", "下雨", "多云", "有风", "温和", "寒冷", "温暖", "有雾"]
SENTENCES = [
    "The weather in {city} is {w} today, and the forecast for tomorrow is {w2}.",
    "People in {city} check the weather before they leave home in the morning.",
    "A weather tool returns the current conditions of a city as a short report.",
    "In spring the parks of {city} are full of visitors when the days are {w}.",
    "The assistant reads the tool result and answers the question about {city}.",
    "Travellers to {city} pack an umbrella when the sky is {w2}.",
]
SENTENCES_ZH = ["{city}今天的天气{w}，明天{w2}。", "人们出门前会查看{city}的天气。",
                "天气工具会返回一个城市的当前天气。"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SYSTEM = "You are a helpful assistant."


def raw_documents(n: int = 400, seed: int = 0) -> list[dict]:
    """Web-like documents: English and Chinese paragraphs, some exact and near duplicates, some with e-mail
    addresses (PII) and some junk (a line of symbols, a three-word page) for the filters to remove."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        city = rng.choice(CITIES)
        if i % 5 == 4:
            zh = CITIES_ZH[city]
            text = "".join(rng.choice(SENTENCES_ZH).format(city=zh, w=rng.choice(WEATHER_ZH), w2=rng.choice(WEATHER_ZH))
                           for _ in range(rng.randint(6, 10)))
        else:
            text = " ".join(rng.choice(SENTENCES).format(city=city, w=rng.choice(WEATHER), w2=rng.choice(WEATHER))
                            for _ in range(rng.randint(6, 12)))
        if i % 17 == 0:
            text += f" Write to the editor at editor{i}@weather-news.example.com for corrections."
        docs.append({"id": f"doc-{i}", "text": text})
    docs += [dict(d, id=d["id"] + "-copy") for d in docs[:30]]  # exact duplicates
    for d in docs[30:60]:  # near duplicates: one sentence appended
        docs.append({"id": d["id"] + "-near", "text": d["text"] + " Updated hourly."})
    docs += [{"id": "junk-0", "text": "$$$ !!! ### @@@ %%% ^^^ &&& *** ((( )))"},
             {"id": "junk-1", "text": "click here now"}]
    rng.shuffle(docs)
    return docs


def tool_conversation(city: str) -> list[dict]:
    """A user asks for a city's weather; the assistant calls get_weather (the SFT target)."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "call_0", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]},
    ]


def sft_records(cities: list[str]) -> list[dict]:
    return [{"messages": tool_conversation(c), "tools": TOOLS} for c in cities]
