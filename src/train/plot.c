/* plot.c — a loss-curve picture (SVG, no dependencies) from metrics.jsonl. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "train/train.h"

typedef struct {
    double *x, *y;
    int n, cap;
} series;

static void push(series *s, double x, double y) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->x = lg_realloc(s->x, (size_t)s->cap * sizeof(double));
        s->y = lg_realloc(s->y, (size_t)s->cap * sizeof(double));
    }
    s->x[s->n] = x;
    s->y[s->n++] = y;
}

static void polyline(FILE *f, const series *s, double x0, double x1, double y0, double y1, const char *color,
                     int dots) {
    const double L = 70, R = 20, T = 40, Bm = 50, W = 760, H = 420;
    if (!s->n) return;
    if (!dots) fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", color);
    for (int i = 0; i < s->n; i++) {
        double px = L + (s->x[i] - x0) / (x1 - x0 > 0 ? x1 - x0 : 1) * (W - L - R);
        double py = T + (1 - (s->y[i] - y0) / (y1 - y0 > 0 ? y1 - y0 : 1)) * (H - T - Bm);
        if (dots) fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px, py, color);
        else fprintf(f, "%.1f,%.1f ", px, py);
    }
    if (!dots) fprintf(f, "\"/>\n");
}

int lg_plot_loss_svg(const char *metrics, const char *svg_path, const char *title) {
    char *text;
    if (lg_read_file(metrics, &text, NULL) != 0) return -1;
    series tr = {0}, va = {0};
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        cJSON *st = cJSON_GetObjectItem(j, "step"), *lo = cJSON_GetObjectItem(j, "loss"),
              *vl = cJSON_GetObjectItem(j, "val_loss");
        if (cJSON_IsNumber(st) && cJSON_IsNumber(lo) && isfinite(lo->valuedouble))
            push(&tr, st->valuedouble, lo->valuedouble);
        if (cJSON_IsNumber(st) && cJSON_IsNumber(vl) && isfinite(vl->valuedouble))
            push(&va, st->valuedouble, vl->valuedouble);
        cJSON_Delete(j);
    }
    free(text);
    double x0 = 0, x1 = 1, y0 = INFINITY, y1 = -INFINITY;
    for (int i = 0; i < tr.n; i++) {
        x1 = LG_MAX(x1, tr.x[i]);
        y0 = LG_MIN(y0, tr.y[i]);
        y1 = LG_MAX(y1, tr.y[i]);
    }
    for (int i = 0; i < va.n; i++) {
        y0 = LG_MIN(y0, va.y[i]);
        y1 = LG_MAX(y1, va.y[i]);
    }
    if (!isfinite(y0)) y0 = 0, y1 = 1;
    double pad = (y1 - y0) * 0.05 + 1e-6;
    y0 -= pad;
    y1 += pad;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"420\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n<rect width=\"760\" height=\"420\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"380\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">%s</text>\n", title ? title : "loss");
    fprintf(f, "<line x1=\"70\" y1=\"370\" x2=\"740\" y2=\"370\" stroke=\"black\"/>\n"
               "<line x1=\"70\" y1=\"40\" x2=\"70\" y2=\"370\" stroke=\"black\"/>\n");
    for (int i = 0; i <= 5; i++) {
        double v = y0 + (y1 - y0) * i / 5, py = 370 - 330.0 * i / 5;
        fprintf(f, "<line x1=\"66\" y1=\"%.1f\" x2=\"740\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", py, py);
        fprintf(f, "<text x=\"62\" y=\"%.1f\" text-anchor=\"end\">%.3f</text>\n", py + 4, v);
        double sx = x0 + (x1 - x0) * i / 5, px = 70 + 670.0 * i / 5;
        fprintf(f, "<text x=\"%.1f\" y=\"386\" text-anchor=\"middle\">%.0f</text>\n", px, sx);
    }
    fprintf(f, "<text x=\"405\" y=\"410\" text-anchor=\"middle\">step</text>\n");
    fprintf(f, "<text x=\"18\" y=\"205\" transform=\"rotate(-90 18 205)\" text-anchor=\"middle\">loss</text>\n");
    polyline(f, &tr, x0, x1, y0, y1, "#1f77b4", 0);
    polyline(f, &va, x0, x1, y0, y1, "#d62728", va.n < 2);
    if (va.n >= 2) polyline(f, &va, x0, x1, y0, y1, "#d62728", 1);
    fprintf(f, "<text x=\"600\" y=\"58\" fill=\"#1f77b4\">train loss</text>\n");
    if (va.n) fprintf(f, "<text x=\"600\" y=\"74\" fill=\"#d62728\">validation loss</text>\n");
    fprintf(f, "</svg>\n");
    fclose(f);
    int rc = lg_write_file_atomic(svg_path, buf, len);
    free(buf);
    free(tr.x);
    free(tr.y);
    free(va.x);
    free(va.y);
    return rc;
}
