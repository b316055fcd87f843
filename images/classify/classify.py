"""Classify an image by its pixels: PNG (8-bit grey/RGB/RGBA/palette, non-interlaced) or PPM/PGM."""
import json
import struct
import sys
import zlib

from lightabaco.actor import get_binary_message, send_bytes_result


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data):
    """(width, height, list of (r, g, b) rows flattened)."""
    pos, chunks, palette = 8, [], None
    width = height = depth = colour = interlace = None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = [tuple(body[i:i + 3]) for i in range(0, len(body), 3)]
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    if depth != 8 or interlace:
        raise ValueError(f"only 8-bit non-interlaced PNGs are supported (got depth {depth}, interlace {interlace})")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    pixels = []
    offset = 0
    for _ in range(height):
        kind = raw[offset]
        line = bytearray(raw[offset + 1:offset + 1 + stride])
        offset += 1 + stride
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                line[i] = (line[i] + _paeth(left, up, corner)) & 0xFF
        previous = line
        for x in range(width):
            px = line[x * channels:(x + 1) * channels]
            if colour == 3:
                pixels.append(palette[px[0]])
            elif channels <= 2:
                pixels.append((px[0], px[0], px[0]))
            else:
                pixels.append((px[0], px[1], px[2]))
    return width, height, pixels


def decode_pnm(data):
    """P3/P6 (colour) and P2/P5 (grey) Netpbm images with maxval <= 255."""
    tokens, pos = [], 0
    while len(tokens) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        start = pos
        while not data[pos:pos + 1].isspace():
            pos += 1
        tokens.append(data[start:pos])
    magic, width, height, maxval = tokens[0], int(tokens[1]), int(tokens[2]), int(tokens[3])
    channels = 3 if magic in (b"P3", b"P6") else 1
    if magic in (b"P6", b"P5"):
        body = data[pos + 1:pos + 1 + width * height * channels]
    else:
        body = [int(v) for v in data[pos:].split()[:width * height * channels]]
    scale = 255 / maxval
    values = [int(v * scale) for v in body]
    if channels == 1:
        return width, height, [(v, v, v) for v in values]
    return width, height, [tuple(values[i:i + 3]) for i in range(0, len(values), 3)]


def classify(data):
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        kind, (width, height, pixels) = "png", decode_png(data)
    elif data[:2] in (b"P2", b"P3", b"P5", b"P6"):
        kind, (width, height, pixels) = "pnm", decode_pnm(data)
    else:
        raise ValueError("not a PNG or PPM/PGM image")
    n = len(pixels) or 1
    mean = [round(sum(p[c] for p in pixels) / n, 1) for c in range(3)]
    luma = 0.2126 * mean[0] + 0.7152 * mean[1] + 0.0722 * mean[2]  # Rec. 709 relative luminance
    brightness = "dark" if luma < 85 else "medium" if luma < 170 else "bright"
    spread = max(mean) - min(mean)
    dominant = "grey" if spread < 16 else ("red", "green", "blue")[mean.index(max(mean))]
    return {"format": kind, "width": width, "height": height, "mean_rgb": mean,
            "luminance": round(luma, 1), "brightness": brightness, "dominant": dominant}


def main():
    data = get_binary_message()
    if not data:
        print("classify expects a binary message: send a PNG or PPM image as application/octet-stream")
        return 2
    try:
        answer = classify(data)
    except (ValueError, KeyError, IndexError, struct.error, zlib.error) as exc:
        print(f"cannot classify this image: {exc}")
        send_bytes_result(json.dumps({"error": str(exc)}).encode())
        return 1
    print(f"{answer['width']}x{answer['height']} {answer['format']}: {answer['brightness']}, mostly {answer['dominant']}")
    send_bytes_result(json.dumps(answer).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
